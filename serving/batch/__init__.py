"""Batch scoring of record files without HTTP (``refracture predict``): the pandas engine
(``pandas_engine``) and the Spark engine (``spark_engine``)."""
