"""vidfeat: aligned multi-modal video features and the models that use them.

One import name holds everything; the packages and modules, from the command line down:

- ``cli``: the command line (``vidfeat``, ``python -m vidfeat``), one module per command
  group; the only place that imports click;
- ``fusion``: what learns from stored features (fusion heads, their trainer, evaluation,
  the LightGBM ensemble); only ``cli`` imports it;
- ``extract``: extraction over a video list (jobs, engines, flow fields, network features);
  ``export``, ``layouts``, ``rowsets``, ``show``, ``probe``: a set to plain files, row sets in
  the layouts of ActionFormer, BMN (mmaction2) and G-TAD, several row sets read row for row, a
  contact sheet of one video, a table of what a list's videos hold; ``timeline``: the sheet's
  per-row score timeline of a row set;
- ``train``, ``schedule``: the training loop of a modality network on videos; the
  learning-rate schedule both trainers share;
- ``models``: the run folder (its config, building and loading its network, its
  preprocessing); import, load (:func:`load_model`) and describe runs, the authors' released
  weights included;
- ``store``: the HDF5 feature store, a writer/reader pair;
- ``nets``, ``audio``, ``flow``: segment networks, VGGish, optical-flow methods;
- ``clips``, ``rowclips``, ``decode``, ``grid``, ``videolist``, ``synth``: videos in, clips
  out (``rowclips``: the rows of untrimmed video, streamed); ``synth_untrimmed``: long
  synthetic videos with annotated actions (``synth``'s classes);
- ``device``, ``precision``, ``cores``, ``children``, ``metrics``, ``plots``: where networks
  run and in what precision and memory format (``--precision``), how many threads a process
  may use, the safe path of the processes it starts; Prec@k and confusion matrices; training
  curves and bars;
- ``errors``, ``outdir``, ``csvsafe``, ``params``, ``provenance``, ``registry``, ``report``,
  ``stop``: shared by all of them (``errors``: vidfeat's own hierarchy, which the command line
  turns into its messages; ``outdir``: output folders, :func:`~vidfeat.outdir.atomic_write` and
  appends that follow no link; ``csvsafe``: CSV cells a spreadsheet shows as text; ``params``:
  configuration fields that declare their own command-line option).

Dependencies point down that list, never up and never in a circle.
"""

from vidfeat._version import __version__

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    # Lazy, so `import vidfeat` (and `vidfeat --help`) does not load torch.
    if name == "load_model":
        from vidfeat.models import load_model

        return load_model
    raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")
