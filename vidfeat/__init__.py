"""vidfeat: aligned per-segment multi-modal video features and the models that use them.

Everything up to stored features lives here; what learns from stored features lives in
``fusion``. The packages, from the command line down:

- ``extract``: extraction over a video list (jobs, engines, flow fields, network features);
- ``train``: end-to-end training of a modality network on videos;
- ``store``: the HDF5 feature store, a writer/reader pair;
- ``nets``, ``audio``, ``flow``: segment networks, VGGish, optical-flow methods;
- ``clips``, ``decode``, ``grid``, ``videolist``, ``synth``: videos in, clips out;
- ``errors``, ``provenance``, ``registry``, ``report``, ``stop``: shared by all of them.

Dependencies point down that list, never up and never in a circle; nothing here imports
``fusion`` or the CLI.
"""

__version__ = "0.1.0"
