"""Subtitle text rules as pure functions: line breaking, transcript units, character alignment, cue
serialisation (SRT/VTT) and the ASR languages. No I/O, no models.
"""
