"""The coded messages of the `apply` command (raised as PaDeLLMError)."""
from __future__ import annotations

from .errors import ErrorsWithCodes


class ApplyErrors(metaclass=ErrorsWithCodes):
    """The `apply` command's coded messages (PaDeLLMError carries them)."""

    A001 = "{file}:{line}: not a JSON object ({err}). Every line of a JSONL file must be one JSON object."
    A002 = ("{file}:{where}: no {key!r} field (found {found}). Name the text field with --text-key or the "
            "id field with --id-key.")
    A003 = ("{file}:{line}: the text of id {id!r} is {kind}, not a string. Give every record a string "
            "in {key!r}.")
    A004 = ("{file}:{line}: the id {id!r} is {kind}; ids must be strings or integers (--id-key {key!r}), "
            "and of one kind within a file.")
    A005 = ("{file}:{line}: the id {id!r} was already used at {first}. Ids must be unique (resume relies "
            "on them).")
    A006 = "{file}: the column {key!r} has type {kind}; {want}."
    A007 = ("No input: {path!r} is not a JSONL ({jsonl}) or Parquet file, nor a folder holding such files.")
    A008 = "The folder {path!r} mixes JSONL and Parquet files; give one kind per run."
    A009 = ("The output folder {path!r} holds {file!r}, which has another schema ({found}) than this run "
            "writes ({want}). Write to a new folder, or re-run with the same --id-key and --keep-columns.")
    A010 = "The pipeline {path!r} does not exist. Save one with nlp.to_disk, or give the name of a package."
    A011 = ("{count} block(s) failed, more than --max-errored-blocks {limit}: {err}. The shards written so "
            "far are kept; fix the cause and re-run the same command to resume.")
    A012 = "{file}: cannot be read ({err})."
    A013 = "Invalid option {flag} {value!r}: {why}."
    A014 = "The output {path!r} is a file; OUTPUT must be a folder (it is created if missing)."
    A015 = "--backend ray needs Ray: pip install \"spacy_padellm[ray]\" (ray[data]) ({err})."
    A016 = ("The pipeline folder {path!r} does not exist on {host}. Every node needs it at the same path (a shared "
            "file system), or install it as a package made with `spacy package` on every node and pass its name.")
