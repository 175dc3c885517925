"""chatrec's benchmark harness: `make bench`, or `python -m bench [--quick] [--scale N]`.

Modules, in the order a run uses them:

- context: workload sizes, the local Ray, synthetic data (chatrec.datasets.synth), scratch space;
- measure: interleaved repetitions, median and spread, per-repetition ratios, peak RSS sampling;
- machine: what the figures were measured on;
- embedding: the embedding stage vs a plain encoder loop and SentenceTransformer.encode, and its profile;
- topk: the top-K stage vs faiss IndexFlatIP.search, its profile, IVF/HNSW recall;
- scaling: the whole job as items and users grow 10x, and at the product's defaults;
- parquet_out: Parquet rows/s and bytes per user;
- gpu: the GPU path against the device's matmul ceiling (only where there is a GPU);
- report: results.json -> the generated section of BENCHMARKS.md.

`python -m bench.refresh` (bench/refresh.py) is a separate benchmark: the nightly refresh
against a full run on MovieLens-100K.
"""
