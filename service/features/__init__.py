"""The feature extractors: numbers computed from prompts and answers so that their text never has to
leave memory (docs/features.md).

- :mod:`.prompt`: cheap numeric features of a prompt, on the request path (length, turns, ...), and
  the shipper's prompt features;
- :mod:`.text`: a prompt's language and other text features, in the event shipper;
- :mod:`.topic_sketch`: a prompt's topic as a small hashed vector;
- :mod:`.answer`: an answer's features (refusal, empty, truncated), in the event shipper;
- :mod:`.answer_comparison`: scores comparing two answers (a shadow pair; ``splitwatch eval``).
"""
