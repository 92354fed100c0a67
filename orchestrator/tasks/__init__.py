"""Tasks: base models and labelled datasets by reference, prepared once and cached.

Public names (import them from their modules; this file imports nothing, so that the
spec's checks can ask a task type about its references without importing torch):

- ``types.get_task_type(task.type) -> TaskType``: what depends on the inputs (texts,
  images): reference checks, preparing the arrays, model loading, target and head
  modules, batching, evaluation, the FLOP probe and unit (``types/base.py``).
- ``prepare.prepare_task(task, base_dir, cache_dir) -> PreparedTask``: the splits as
  the type's arrays (``TokenizedSplit``, ``ImageSplit``), cached as ``.npz``.
- ``models.load_model`` / ``resolve_model`` / ``default_target_modules`` / ``head_modules``,
  ``ModelUnavailableError``: the text type's models, by their old names.
- ``datasets.load_dataset`` / ``dataset_ref_problem``, ``DatasetUnavailableError``; images:
  ``image_data.load_image_dataset``.
- ``data_checks.data_file_issues``: a user's ``csv:``/``jsonl:`` file checked at the spec
  stage (``data_files`` reads it, the same way for the check and the run); images:
  ``image_data.scan_folder``.
"""
