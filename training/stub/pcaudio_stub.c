/* A stand-in for libpcaudio.so.0 (sound-card output), which libespeak-ng.so.1 links against.
 * The training run synthesises into memory only (AUDIO_OUTPUT_SYNCHRONOUS), so no function here
 * is ever called; the real library would pull in ALSA and PulseAudio, which the GPU box lacks.
 * Signatures follow pcaudio's audio.h. */
#include <stddef.h>
#include <stdint.h>

struct audio_object;

struct audio_object *create_audio_device_object(const char *device, const char *application_name,
                                                const char *description) { return NULL; }
int audio_object_open(struct audio_object *o, int format, uint32_t rate, uint8_t channels) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *data, size_t bytes) { return -1; }
int audio_object_drain(struct audio_object *o) { return -1; }
int audio_object_flush(struct audio_object *o) { return -1; }
const char *audio_object_strerror(struct audio_object *o, int error) { return "no audio output"; }
