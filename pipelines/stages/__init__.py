"""The job's stages, one file each, in data-flow order (pipelines/full_run.py lists them as
jobs; pipelines/stage_runner.py runs them). Each reads what earlier stages produced from
the run's context (context.py) and sets what it produces there.

    read_validate   read+validate: inputs read and checked, rejects kept
    item_text       item-text: each item rendered as text
    cluster         Ray joined or started, the actor pools sized (a driver step)
    embed_items     embed-items: item text vectors (encoder actors, embedding cache)
    embed_profiles  embed-profiles: the users table's profile texts, for the matcher
    train_matcher   the matcher's source (a driver step) and train-matcher
    token_states    token-states: the catalogue below a finetuned encoder top
    fusion          fusion: the item tower's vectors and the tuned fusion (part of train-matcher)
    catalogue       the catalogue and its index into the object store (a driver step)
    histories       histories: each user's items and history key
    embed_users     embed-users: user vectors (user-tower actors)
    top_k           top-k: top-K with reasons, popularity fallback
    rerank          rerank: a language model orders the candidates
    publish         publish: manifest and commit, for a run or a trained matcher
"""
