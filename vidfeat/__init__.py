"""vidfeat: aligned per-segment multi-modal video features and the models that use them.

Everything up to stored features lives here; what learns from stored features lives in
``fusion``. The packages, from the command line down:

- ``extract``: extraction over a video list (jobs, engines, flow fields, network features);
- ``train``, ``schedule``: the training loop of a modality network on videos; the
  learning-rate schedule both trainers share;
- ``models``: the run folder (its config, building and loading its network, its
  preprocessing); import, load (:func:`load_model`) and describe runs, the authors' released
  weights included;
- ``store``: the HDF5 feature store, a writer/reader pair;
- ``nets``, ``audio``, ``flow``: segment networks, VGGish, optical-flow methods;
- ``clips``, ``decode``, ``grid``, ``videolist``, ``synth``: videos in, clips out;
- ``errors``, ``outdir``, ``params``, ``provenance``, ``registry``, ``report``, ``stop``: shared
  by all of them (``outdir``: output folders and :func:`~vidfeat.outdir.atomic_write`;
  ``params``: configuration fields that declare their own command-line option).

Dependencies point down that list, never up and never in a circle; nothing here imports
``fusion`` or the CLI.
"""

from vidfeat._version import __version__

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    # Lazy, so `import vidfeat` (and `vidfeat --help`) does not load torch.
    if name == "load_model":
        from vidfeat.models import load_model

        return load_model
    raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")
