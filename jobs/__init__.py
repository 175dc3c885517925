"""Entry points for `ray job submit` and schedulers, each `python -m jobs.<name> --config FILE`.

    full_run         the full job: validate, embed, top-K with reasons, publish a run
    nightly_refresh  the scheduled incremental refresh: re-embed what changed, reuse the
                     previous run's matcher and unchanged users' vectors, top-K for all
    evaluate         score published runs against a held-out log; A/B against a baseline

Each job logs to stderr and prints a JSON summary as the last line of stdout; on failure
it prints one line with the reason to stderr and exits with the error's code (see
chatrec.entrypoint). Under `ray job submit` they join that cluster; run directly, they
start a local Ray like `chatrec run` does.
"""
