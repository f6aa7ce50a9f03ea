"""Models as assets: a catalogue of known files and a store that fetches and verifies them."""
