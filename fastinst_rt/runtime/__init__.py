"""The deployment runtime: ``Segmenter``, results, pre/post-processing shared by every backend."""
