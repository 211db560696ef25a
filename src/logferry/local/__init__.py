"""The embedded AWS emulator (moto server, patched, IAM enforcement on) for tests and --local."""

from logferry.local.emulator import Emulator, LocalAccount, start_emulator

__all__ = ["Emulator", "LocalAccount", "start_emulator"]
