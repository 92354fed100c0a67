"""Tasks: base models and labelled datasets by reference, tokenised once and cached.

Public names (import them from their modules; this file imports nothing, so that the
spec's checks can use ``models.is_known_model_ref`` without importing torch):

- ``prepare.prepare_task(task, base_dir, cache_dir) -> PreparedTask``: the splits as
  token arrays (``TokenizedSplit``), what every trial trains and evaluates on.
- ``models.load_model`` / ``resolve_model`` / ``default_target_modules`` / ``head_modules``,
  ``ModelUnavailableError``: embedded, random (tests), local or hub models.
- ``datasets.load_dataset`` / ``dataset_ref_problem``, ``DatasetUnavailableError``.
- ``data_checks.data_file_issues``: a user's ``csv:``/``jsonl:`` file checked at the spec
  stage (``data_files`` reads it, the same way for the check and the run).
"""
