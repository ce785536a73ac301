"""The device contract: topics, payload formats, codecs and the MQTT client wrapper."""
