"""Fuzz targets for passt-sep's parsers (atheris): see common.py, run.py and make_corpus.py."""
