"""The Spec stage: a hypothesis file, read with line numbers, validated, typed.

Public names (import them from their modules):

- ``loader.load_hypothesis(path, profile) -> LoadedSpec``: the whole stage; raises
  ``errors.SpecError`` carrying every ``errors.SpecIssue`` (``FILE:LINE: field: message``).
- ``models.Hypothesis`` and its parts (``TaskSpec``, ``TrainingSpec``, ``SearchSpec``,
  ``ConfirmSpec``, ``JudgeSpec``, ``Resources``...): the file as strict pydantic models.
- ``constraints.Constraint`` / ``parse_constraint``: ``metric OP bound`` search constraints.
- ``yaml_lines.LocatedYaml``: YAML that remembers each key's line (also used for search
  spaces and for data-file errors).

``checks`` (cross-field checks) and ``pydantic_errors`` are the loader's internals.
This file imports nothing, so importing one module does not import the others.
"""
