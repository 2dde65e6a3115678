"""LatentForge's user-facing entry points: the ``latentforge`` command (latentforge.cli) and the HTTP client
(latentforge.client). They stand on api/, worker/ and shared/; nothing there imports them."""
