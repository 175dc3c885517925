"""Classic recommenders that publish the same output layout as `chatrec run`.

Modules, in data-flow order (tested in tests/test_baselines.py):

    interaction_matrix  clean log -> sorted ids, binary CSR X (users x items), recency positions
    base                the Baseline / FittedBaseline contract and parameter checking;
                        EpochTrainedBaseline, whose epoch count validation chooses
    popularity          items by distinct users (same score and reason as chatrec's fallback)
    itemknn             cosine item-kNN, top-`neighbors` per item, optional shrinkage
    ease                EASE closed form, and EASE with recency-weighted user rows
    lowrank             the low-rank linear autoencoder (EASE's scalable relative), recency-weighted
    item_item           scoring and "because" items for item x item models (item-kNN, EASE)
    topk                top-K per user, seen items excluded, fixed (n, K) shape, ties by item_id
    recommend           batched top-K as item codes (tuning) or RECOMMENDATIONS rows (output)
    sasrec              SASRec, the next-item transformer: sequences, windows, parameters
    sasrec_net          its torch network, full-softmax training and early stopping
                        (tests/test_sasrec.py)
    tuning              grid search (or early stopping) on a validation log by NDCG@10
    registry            names -> baselines: popularity, itemknn, ease, ease-recency,
                        lowrank-recency, sasrec, content

The job that reads inputs and publishes a run is pipelines/baseline.py (`run_baseline`).
"""

from chatrec.baselines.registry import BASELINES, get_baseline

__all__ = ["BASELINES", "get_baseline"]
