"""TFDS builders that prepare datasets from files on local disk (``manual_dir``).

* ``omniglot_local`` -- Omniglot from Lake's two archives; what
  ``load_omniglot(data_dir)`` reads. Without a data dir, TFDS's own
  ``omniglot`` (which downloads the same archives) is read instead.
* ``miniimagenet_local`` -- miniImageNet (Ravi & Larochelle split) from a
  user-supplied image folder, at 84x84x3.

Both are prepared once per distinct set of source files into the TFDS data
dir (``$TFP_ABML_TFDS_DIR``, else TFDS's default); see ``preparation``. The
modules import ``tensorflow_datasets`` (slow), so this package does not import
them itself.
"""
