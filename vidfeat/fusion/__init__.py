"""Everything that learns from stored features (the feature store's consumers).

    config.py    FuseConfig (a fusion run's config.yaml; its fields are fuse train's options)
    data.py      joins feature sets of a store by video id into ``(T, D_m)`` + masks
    heads/       the fusion heads (txn, itxn, fflstm, attention-clusters, single), one registry
    trainer.py   the run folder (open / resume / checkpoints) and the training loop
    dist.py      the torchrun context (rank, process group) and the collectives training uses
    evaluate.py  load a run; evaluate / predict on a list; per-video scores CSV
    ensemble.py  LightGBM stacking over the class scores of runs (a sklearn estimator)

Imports: modules here may import ``vidfeat.*`` and each other along
config, data, heads, dist -> trainer -> evaluate -> ensemble (never the other way round); never
``vidfeat.cli`` (the command line imports fusion, not the reverse), and nothing outside
``vidfeat.cli`` imports fusion.
"""
