"""The XGBoost model family: Dask training (:mod:`.training`, :mod:`.family`) and the
predictor (:mod:`.predictor`), which imports nothing of Dask so that a model check's child
process and an exported bundle load it alone."""
