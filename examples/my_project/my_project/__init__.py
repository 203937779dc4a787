"""A user's own project, as a researcher would have it: a network (``nets.build``) and a data set (``data.build``)
that lslu-sweep knows nothing about, named in ``sweep.yaml`` by import path."""
