"""Recording of a session into a crash-safe MP4 under the configured recordings folder.

The file is a fragmented MP4 (an empty moov up front, then a moof+mdat fragment at every keyframe
and at least every second): a server that dies mid-recording leaves a file that plays up to its last
fragment. Its name is the output id (never a client-given path); it can be downloaded while it is
written and after the session ended, at GET /recordings/{output_id}.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from live_avatar.server.outputs.encoder import EncoderSettings, MuxTarget, SlotEncoder
from live_avatar.server.outputs.worker import ThreadedOutput

log = logging.getLogger(__name__)

FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000"}


class RecordingOutput(ThreadedOutput):
    type = "record"

    def __init__(self, session: Any, folder: Path, settings: EncoderSettings) -> None:
        super().__init__(session)
        self.path = Path(folder) / f"{self.id}.mp4"
        self.settings = settings
        self.frames_written = 0
        self.slots_encoded = 0  # slots this output received and encoded
        self.finished_at: float | None = None

    def work(self) -> None:
        encoder = None
        try:
            while (slot := self.next_slot()) is not None:
                if slot is False:
                    continue
                if encoder is None:
                    height, width = slot.frame.shape[:2]
                    target = MuxTarget(str(self.path), "mp4", container_options=FRAGMENTED_MP4)
                    encoder = SlotEncoder(target, self.settings, width, height, slot.audio.size)
                    self.state = "recording"
                encoder.write(slot)
                self.slots_encoded += 1
                self.frames_written = encoder.frames_written  # repeats for missed slots included
        except OSError as exc:  # disk full, folder gone: the file so far stays playable
            self.state, self.error = "failed", f"writing the recording failed: {exc.strerror or exc}"
            log.warning("output %s: %s", self.id, self.error)
        finally:
            if encoder is not None:
                try:
                    encoder.close(flush=self.state != "failed")
                except Exception as exc:  # noqa: BLE001
                    log.warning("output %s: closing the recording failed: %s", self.id, exc)
            self.finished_at = time.time()

    def describe(self) -> dict[str, Any]:
        size = self.path.stat().st_size if self.path.exists() else 0
        return {
            **super().describe(),
            "frames_written": self.frames_written,
            "slots_encoded": self.slots_encoded,
            "duration_s": round(self.frames_written / self.settings.fps, 2),
            "bytes": size,
            "download": f"/recordings/{self.id}",
        }
