"""statepipe control_plane."""
