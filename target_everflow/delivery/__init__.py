"""The delivery engine and the Everflow postback."""
