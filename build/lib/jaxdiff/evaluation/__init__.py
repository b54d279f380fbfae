"""Layer 3, measuring samples: FID/KID maths (``fid``), feature extractors and reference statistics
(``features``, ``classifier``, ``inception``), and conditional accuracy (``accuracy``)."""
