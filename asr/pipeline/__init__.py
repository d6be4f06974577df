"""The stages between a file and a result: decoding, VAD, hotwords, punctuation, speakers,
sentences and subtitles, and the `Result` every door renders."""
