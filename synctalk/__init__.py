"""synctalk: lip-synced talking-head production with SyncTalk_2D's method."""

__version__ = "0.1.0"
