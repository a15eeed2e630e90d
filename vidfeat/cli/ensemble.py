"""``vidfeat ensemble`` (fit a LightGBM stack over the class scores of members, cross-fitted)
and ``vidfeat ensemble predict`` (score new videos with a fitted one)."""

from __future__ import annotations

import click

from vidfeat.cli.base import Group
from vidfeat.cli.options import DEVICE, SEED, VIDEO_ROOT, given, video_root_applies


def _members(values: tuple[str, ...]) -> list[str]:
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def _member_options_apply(specs: list[str], store: str | None) -> None:
    """--store serves fusion-run and set: members, --device runs fusion-run members: given
    for members that use neither (score files), they are refused."""
    from vidfeat.fusion.ensemble import member_kind

    if not specs:
        return  # no members known here: the command names the problem
    kinds = {member_kind(m) for m in specs}
    if store is not None and not kinds & {"run", "set", None}:  # None: load_member says why
        raise click.UsageError(
            "--store serves fusion-run and set:NAME members; these members are score files "
            "(they carry their scores): leave --store out"
        )
    if given("device") and not kinds & {"run", None}:
        raise click.UsageError(
            "--device runs the heads of fusion-run members; these members are score files or "
            "stored scores (nothing runs): leave --device out"
        )


@click.group(cls=Group, invoke_without_command=True)
@click.option(
    "--members",
    multiple=True,
    metavar="MEMBER",
    help="Fusion run folder, set:NAME (stored clip scores) or a scores CSV; repeat "
    "or comma-separate.",
)
@click.option(
    "--store",
    type=click.Path(exists=True, file_okay=False),
    help="Feature store (for runs and set: members).",
)
@click.option(
    "--videos",
    type=click.Path(dir_okay=False),
    help="Labelled held-out list the ensemble is fit and cross-fitted on.",
)
@click.option("--out", type=click.Path(file_okay=False), help="Ensemble folder.")
@click.option("--folds", default=5, show_default=True, help="Stratified cross-fitting folds.")
@click.option("--num-leaves", default=7, show_default=True)
@click.option("--learning-rate", default=0.05, show_default=True)
@click.option("--n-estimators", default=200, show_default=True)
@click.option("--min-child-samples", default=5, show_default=True)
@click.option(
    "--early-stopping",
    default=0,
    show_default=True,
    help="Rounds without improvement on an inner hold-out (0: off).",
)
@click.option(
    "--intersect",
    is_flag=True,
    help="Drop videos some member lacks (reported) instead of refusing.",
)
@SEED
@DEVICE
@VIDEO_ROOT
@click.option(
    "--overwrite",
    is_flag=True,
    help="Fit into an --out that holds other content (moved aside first).",
)
@click.pass_context
def ensemble(
    ctx: click.Context,
    members: tuple[str, ...],
    store: str | None,
    videos: str | None,
    out: str | None,
    folds: int,
    num_leaves: int,
    learning_rate: float,
    n_estimators: int,
    min_child_samples: int,
    early_stopping: int,
    intersect: bool,
    seed: int,
    device: str,
    video_root: str | None,
    overwrite: bool,
) -> None:
    """Stack member class scores with a LightGBM GBDT; K-fold cross-fitted evaluation.

    Prints every member's Prec@1/Prec@5, the mean-of-probabilities baseline and the ensemble's
    out-of-fold scores, all on the same videos; writes the models, table (Markdown + CSV),
    out-of-fold scores and a bar chart to --out.
    """
    if ctx.invoked_subcommand is not None:
        before = [
            p.opts[0]
            for p in ctx.command.params
            if ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE
        ]
        if before:
            raise click.UsageError(
                f"{', '.join(before)} given before `{ctx.invoked_subcommand}` fit an ensemble "
                f"and do not apply to `ensemble {ctx.invoked_subcommand}`; its own options go "
                f"after the word {ctx.invoked_subcommand}"
            )
        return
    from vidfeat.fusion.ensemble import GBDTStacker, format_table, run_ensemble
    from vidfeat.videolist import load_list

    for name, val in (("--members", members), ("--videos", videos), ("--out", out)):
        if not val:
            raise click.UsageError(f"{name} is required")
    video_root_applies(video_root, videos)
    _member_options_apply(_members(members), store)
    est = GBDTStacker(
        num_leaves=num_leaves,
        learning_rate=learning_rate,
        n_estimators=n_estimators,
        min_child_samples=min_child_samples,
        early_stopping=early_stopping,
        seed=seed,
    )
    vl = load_list(videos, video_root=video_root, require_labels=True)
    report = run_ensemble(
        _members(members),
        store,
        vl,
        out,
        est=est,
        folds=folds,
        intersect=intersect,
        device=device,
        overwrite=overwrite,
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(format_table(report.rows))
    click.echo(
        f"ensemble -> {out} (table.md, table.csv, oof_scores.csv, bars.png, model.txt, "
        f"{report.folds} fold models in folds/)"
    )


@ensemble.command("predict")
@click.option("--ensemble", "ens", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--members",
    multiple=True,
    help="Members in the fitted order (default: the ones it was fit on).",
)
@click.option("--store", type=click.Path(exists=True, file_okay=False))
@click.option("--videos", required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@DEVICE
@VIDEO_ROOT
def ensemble_predict(
    ens: str,
    members: tuple[str, ...],
    store: str | None,
    videos: str,
    out: str,
    device: str,
    video_root: str | None,
) -> None:
    """Score new videos with a fitted ensemble (class scores + top-5 labels, CSV)."""
    from vidfeat.fusion.ensemble import fitted_members, predict_ensemble
    from vidfeat.videolist import load_list

    video_root_applies(video_root, videos)
    _member_options_apply(_members(members) or fitted_members(ens), store)
    vl = load_list(videos, video_root=video_root)
    report = predict_ensemble(ens, store, vl, out, _members(members) or None, device)
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"ensemble predict: {report.videos} videos -> {out}")
