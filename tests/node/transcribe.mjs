// The official openai npm package against a running asr-server: every response format, the stream,
// translations and /v1/models. The SDK does not validate responses at run time, so each body is checked
// with a zod schema written from the SDK's own declarations (resources/audio/transcriptions.d.ts,
// translations.d.ts, models.d.ts): required fields required, numbers numbers, integers integers.
//
// usage: node transcribe.mjs BASE_URL AUDIO.wav   (prints one JSON line per check; exit 1 on a failure)
import { readFileSync } from 'node:fs';
import OpenAI, { toFile } from 'openai';
import { z } from 'zod';

const [baseUrl, audioPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: 'unused', maxRetries: 0 });
const audio = readFileSync(audioPath);
const file = () => toFile(audio, 'clip.wav');

const Logprob = z.looseObject({
  token: z.string().optional(),
  logprob: z.number().optional(),
  bytes: z.array(z.number().int()).optional(),
});
const DurationUsage = z.looseObject({ type: z.literal('duration'), seconds: z.number() });
const Transcription = z.looseObject({
  text: z.string(),
  logprobs: z.array(Logprob).optional(),
  usage: DurationUsage.optional(),
});
const Segment = z.looseObject({
  id: z.number().int(),
  seek: z.number().int(),
  start: z.number(),
  end: z.number(),
  text: z.string(),
  tokens: z.array(z.number().int()),
  temperature: z.number(),
  avg_logprob: z.number(),
  compression_ratio: z.number(),
  no_speech_prob: z.number(),
});
const Word = z.looseObject({ word: z.string(), start: z.number(), end: z.number() });
const TranscriptionVerbose = z.looseObject({
  duration: z.number(),
  language: z.string(),
  text: z.string(),
  segments: z.array(Segment).optional(),
  words: z.array(Word).optional(),
  usage: DurationUsage.optional(),
});
const Translation = z.looseObject({ text: z.string() });
const TranslationVerbose = z.looseObject({
  duration: z.number(),
  language: z.string(),
  text: z.string(),
  segments: z.array(Segment).optional(),
});
const DeltaEvent = z.looseObject({
  type: z.literal('transcript.text.delta'),
  delta: z.string(),
  logprobs: z.array(Logprob).optional(),
});
const DoneEvent = z.looseObject({
  type: z.literal('transcript.text.done'),
  text: z.string(),
  logprobs: z.array(Logprob).optional(),
});
const Model = z.looseObject({ id: z.string(), created: z.number().int(), object: z.literal('model'), owned_by: z.string() });

const checks = {
  async json() {
    const result = Transcription.parse(await client.audio.transcriptions.create({ model: 'whisper-1', file: await file(), prompt: 'node words' }));
    assert(result.text === 'node words' && result.usage?.type === 'duration', result);
  },
  async text() {
    const text = await client.audio.transcriptions.create({ model: 'whisper-1', file: await file(), response_format: 'text', prompt: 'plain' });
    assert(typeof text === 'string' && text.trim() === 'plain', text);
  },
  async srt() {
    const body = await client.audio.transcriptions.create({ model: 'whisper-1', file: await file(), response_format: 'srt', prompt: 'cue' });
    assert(typeof body === 'string' && body.includes('-->') && body.includes('cue'), body);
  },
  async vtt() {
    const body = await client.audio.transcriptions.create({ model: 'whisper-1', file: await file(), response_format: 'vtt', prompt: 'cue' });
    assert(typeof body === 'string' && body.startsWith('WEBVTT'), body);
  },
  async verbose_json() {
    const result = TranscriptionVerbose.parse(
      await client.audio.transcriptions.create({ model: 'whisper-1', file: await file(), response_format: 'verbose_json', prompt: 'First one. Then two.' }),
    );
    assert(result.segments?.length && result.words === undefined, result);
    assert(result.segments.every((s) => s.tokens.length > 0 && s.avg_logprob <= 0), result.segments);
  },
  async verbose_json_words() {
    const result = TranscriptionVerbose.parse(
      await client.audio.transcriptions.create({
        model: 'whisper-1', file: await file(), response_format: 'verbose_json', timestamp_granularities: ['word'], prompt: 'two words',
      }),
    );
    assert(result.segments === undefined && result.words?.map((w) => w.word).join(' ') === 'two words', result);
  },
  async include_logprobs() {
    const result = Transcription.parse(
      await client.audio.transcriptions.create({ model: 'gpt-4o-transcribe', file: await file(), include: ['logprobs'], prompt: 'scored' }),
    );
    assert(result.logprobs?.length && Buffer.from(result.logprobs.flatMap((l) => l.bytes)).toString() === 'scored', result);
  },
  async chunking_strategy() {
    for (const chunking_strategy of ['auto', { type: 'server_vad', threshold: 0.5, silence_duration_ms: 400 }]) {
      const result = Transcription.parse(
        await client.audio.transcriptions.create({ model: 'gpt-4o-transcribe', file: await file(), chunking_strategy, prompt: 'chunked' }),
      );
      assert(result.text === 'chunked', result);
    }
  },
  async stream() {
    const stream = await client.audio.transcriptions.create({
      model: 'gpt-4o-transcribe', file: await file(), stream: true, include: ['logprobs'], prompt: 'streamed',
    });
    const events = [];
    for await (const event of stream) events.push(event);
    const deltas = events.slice(0, -1).map((e) => DeltaEvent.parse(e));
    const done = DoneEvent.parse(events.at(-1));
    assert(deltas.length >= 1 && done.text === deltas.map((d) => d.delta).join('') && done.logprobs?.length, events);
  },
  async bad_request() {
    try {
      await client.audio.transcriptions.create({ model: 'whisper-1', file: await file(), language: 'klingon' });
    } catch (error) {
      assert(error instanceof OpenAI.BadRequestError && error.param === 'language', String(error));
      return;
    }
    throw new Error('no error for a bad language');
  },
  async translations() {
    const subtitles = '1\n00:00:01,000 --> 00:00:02,500\nGood morning.\n\n2\n00:00:03,000 --> 00:00:04,000\nBye now.\n';
    const srt = () => toFile(Buffer.from(subtitles), 'talk.srt');
    const plain = Translation.parse(await client.audio.translations.create({ model: 'whisper-1', file: await srt() }));
    const verbose = TranslationVerbose.parse(
      await client.audio.translations.create({ model: 'whisper-1', file: await srt(), response_format: 'verbose_json' }),
    );
    assert(plain.text === verbose.text && verbose.segments?.length === 2, { plain, verbose });
    TranslationVerbose.parse(
      await client.audio.translations.create({ model: 'whisper-1', file: await file(), response_format: 'verbose_json', prompt: 'Hello there.' }),
    );
  },
  async models() {
    const list = await client.models.list();
    const served = list.data[0].id;
    const card = Model.parse(await client.models.retrieve(served));
    assert(card.id === served, card);
    try {
      await client.models.retrieve('no-such-model');
    } catch (error) {
      assert(error instanceof OpenAI.NotFoundError && error.code === 'model_not_found', String(error));
      return;
    }
    throw new Error('no 404 for an unknown model');
  },
};

function assert(condition, detail) {
  if (!condition) throw new Error(`unexpected: ${JSON.stringify(detail)}`);
}

let failed = false;
for (const [name, check] of Object.entries(checks)) {
  try {
    await check();
    console.log(JSON.stringify({ check: name, ok: true }));
  } catch (error) {
    failed = true;
    console.log(JSON.stringify({ check: name, ok: false, error: String(error?.stack ?? error) }));
  }
}
process.exit(failed ? 1 : 0);
