"""Audio in: decoding, resampling and voice activity. Everything leaves this room as 16 kHz mono float32.

`SAMPLE_RATE` is the one definition of that rate for the whole project.
"""

SAMPLE_RATE = 16_000
