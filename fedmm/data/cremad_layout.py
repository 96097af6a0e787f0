"""The folder names of a CREMA-D data directory, shared by the loader (:mod:`fedmm.data.cremad`)
and the frame extraction that writes it (:mod:`fedmm.data.prepare_cremad`)."""

#: One WAV file per clip.
AUDIO_DIR = "AudioWAV"
#: One folder of frames (1 per second) per clip.
FRAMES_DIR = "Image-01-FPS"
