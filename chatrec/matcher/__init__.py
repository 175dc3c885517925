"""The finetuned two-tower matcher, in data-flow order (tested in tests/test_matcher.py and tests/test_text_top.py).

- sequences: users' item sequences as flat arrays; (history prefix -> next item) examples.
- profiles: the users table's profile texts and their vectors, the user tower's profile token.
- token_states: each item's token states below the encoder's top layers (text_encoder: finetune).
- model: the two towers (item: text vector + id embedding; user: transformer over history) and
  the encoder's top layers when they are finetuned.
- training: in-batch softmax with log-Q correction, validation, the Ray Train worker loop.
- fusion: the two-tower score fused with recency-weighted EASE, the weight tuned on validation.
- user_tower: the user stage's Ray Data callable for the trained user tower.

The stage that runs Ray Train is pipelines/train_matcher.py.
"""
