"""On-disk formats: encryption, the .tlt and .etlt containers, atomic writes."""
