"""A minimal channel bridge: each line read from stdin is a user message on one channel, and the
agent's replies are printed to stdout as they are written.

The bridge follows the conversation's event stream: a reply appears as the model writes it, its
token deltas printed as they come, and its line is completed by the agent's entry (the reply as
stored; a model step's text starts a line of its own). With --no-stream it long-polls the
conversation's entries instead and prints each reply whole.

A line is sent once the previous one has its reply (turn-taking, so a piped script reads each
reply after its own line); at the end of input the bridge waits for the last reply and exits.

Environment:
  IRONCLAW_URL       the server (http://127.0.0.1:8000)
  IRONCLAW_API_KEY   a tenant key, or a service key with --user

    IRONCLAW_URL=http://127.0.0.1:8000 IRONCLAW_API_KEY=... python examples/bridge.py
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from ironclaw_client import Client, DeltaText, IronclawError


class Replies:
    """The highest seq of an agent entry seen so far, for the sender to wait on."""

    def __init__(self) -> None:
        self.last_agent_seq = 0
        self.failure: BaseException | None = None
        self._changed = threading.Condition()

    def seen(self, seq: int) -> None:
        with self._changed:
            self.last_agent_seq = max(self.last_agent_seq, seq)
            self._changed.notify_all()

    def failed(self, error: BaseException) -> None:
        with self._changed:
            self.failure = error
            self._changed.notify_all()

    def wait_after(self, seq: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: self.last_agent_seq > seq or self.failure is not None, timeout
            )


class ReplyPrinter:
    """Prints a reply as it grows: the text of one model step on one line, what each delta
    adds written at once; the agent's entry then completes the line (or, when the stream's
    text was not the start of the reply, is printed whole on a line of its own)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step: tuple[str, int] | None = None
        # What is printed on the line not ended yet.
        self.line = ""

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _end_line(self) -> None:
        if self.line:
            self._write("\n")
        self.line = ""

    def grew(self, step: tuple[str, int], text: str) -> None:
        """The step's text so far is ``text``."""
        if step != self.step:
            self._end_line()
            self.step = step
        if not text.startswith(self.line):
            # Rewritten (what is printed cannot be taken back): on a line of its own.
            self._end_line()
        self._write(text[len(self.line) :])
        self.line = text

    def reply(self, content: str) -> None:
        if not (self.line and content.startswith(self.line)):
            self._end_line()
        self._write(content[len(self.line) :] + "\n")
        self.line, self.step = "", None


def stream(
    client: Client, conversation_id: str, after_seq: int, replies: Replies, stop: threading.Event
) -> None:
    """Follow the conversation's events after entry ``after_seq`` (a conversation stream's id
    ``N`` means "after entry N"), printing replies as they stream."""
    printer, texts = ReplyPrinter(sys.stdout), DeltaText()
    try:
        for event in client.stream_events(conversation_id, after=str(after_seq)):
            if stop.is_set():
                return
            if event.event == "delta":
                text = texts.add(event)
                if text is not None:
                    printer.grew((event.data["thread_id"], event.data["step"]), text)
            elif event.event == "entry" and event.data["sender"] == "agent":
                printer.reply(event.data["content"])
                replies.seen(event.data["seq"])
            elif event.event == "entry" and event.data["sender"] == "system":
                print(f"[{event.data['content']}]", file=sys.stderr, flush=True)
            else:
                texts.add(event)  # a thread's final event: its steps' texts are let go
    except IronclawError as error:
        replies.failed(error)


def follow(
    client: Client, conversation_id: str, after_seq: int, replies: Replies, stop: threading.Event
) -> None:
    """Follow the conversation's entries by long-polls, printing each reply whole."""
    try:
        for entry in client.follow(conversation_id, after_seq=after_seq, stop=stop):
            if entry["sender"] == "agent":
                print(entry["content"], flush=True)
                replies.seen(entry["seq"])
            elif entry["sender"] == "system":
                print(f"[{entry['content']}]", file=sys.stderr, flush=True)
    except IronclawError as error:
        replies.failed(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channel", default="cli", help="the channel key (default: cli)")
    parser.add_argument("--user", help="the tenant, when IRONCLAW_API_KEY is a service key")
    parser.add_argument(
        "--reply-timeout", type=float, default=120, help="seconds to wait for each reply"
    )
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="long-poll the entries and print each reply whole, instead of streaming it",
    )
    options = parser.parse_args(argv)
    url, key = os.environ.get("IRONCLAW_URL"), os.environ.get("IRONCLAW_API_KEY")
    if not url or not key:
        parser.error("set IRONCLAW_URL and IRONCLAW_API_KEY")
    # Bytes that are not UTF-8 become U+FFFD: the line is still sent, never a traceback.
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")
    client = Client(url, key, user_id=options.user)
    replies, stop = Replies(), threading.Event()
    follower: threading.Thread | None = None
    try:
        for line in sys.stdin:
            text = line.rstrip("\n")
            if not text.strip():
                continue
            sent = client.send_message(options.channel, text)
            if follower is None:
                follower = threading.Thread(
                    target=follow if options.no_stream else stream,
                    args=(client, sent["conversation_id"], sent["seq"] - 1, replies, stop),
                    daemon=True,
                )
                follower.start()
            if not replies.wait_after(sent["seq"], options.reply_timeout):
                print(f"no reply within {options.reply_timeout} s", file=sys.stderr)
                return 1
            if replies.failure is not None:
                print(f"error: {replies.failure}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        return 130
    except IronclawError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        # The follower (a daemon) ends with the process; its long-poll or stream is not waited
        # for.
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
