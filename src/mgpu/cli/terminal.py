"""The client's side of a job's input (`srun -i`, `srun --pty`): this process's stdin, read on a
thread of its own and sent as input frames on the attach connection while the main thread
renders the stream.

Owns: the client's terminal while a `--pty` job runs: raw mode (keystrokes, Ctrl+C and Ctrl+Z
included, go to the job's pty, whose line discipline turns them into signals there), restored on
every way out (the job's end, an error, Ctrl+C from outside, SIGTERM, SIGHUP); the window size,
sent at the start and on every SIGWINCH. Must not: render frames or decide what a job gets.
"""

import os
import select
import signal
import struct
import sys
import threading

READ_SIZE = 64 * 1024  # bytes of stdin in one input frame (protocol.MAX_INPUT_DATA)


class TerminalSignal(Exception):
    """Raised from SIGTERM/SIGHUP handlers while the terminal is raw, so that it is restored on
    the way out; `signum` says which."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class InputSession:
    """Forward stdin to a job: start() after the attach was granted with input, stop() (in a
    finally) when the stream is over."""

    def __init__(self, sender, pty):
        self.sender = sender
        self.pty = pty
        self.stdin = sys.stdin.fileno()
        self.terminal = pty and os.isatty(self.stdin)
        if self.terminal and _in_background(self.stdin):
            self.terminal = False
        # A client in the background of its shell does not read the terminal (it would be
        # stopped by SIGTTIN): its job's stdin simply ends.
        self.background = os.isatty(self.stdin) and _in_background(self.stdin)
        self.saved = None          # the terminal's attributes before raw mode
        self.old_handlers = {}
        self.wake_read, self.wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.resized = True        # send the window size (first at the start)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._forward, name="stdin", daemon=True)

    @property
    def raw(self):
        """True while the terminal is in raw mode (lines need a carriage return)."""
        return self.saved is not None

    def start(self):
        if self.terminal:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.stdin)
            tty.setraw(self.stdin, termios.TCSANOW)
            self.old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._on_resize)
            for signum in (signal.SIGTERM, signal.SIGHUP):
                self.old_handlers[signum] = signal.signal(signum, self._on_exit_signal)
        self.thread.start()

    def stop(self):
        """Stop forwarding and give the terminal back as it was. Safe to call twice."""
        self.done.set()
        self.sender.stopped = True
        self._wake()
        if self.saved is not None:
            import termios

            try:
                termios.tcsetattr(self.stdin, termios.TCSADRAIN, self.saved)
            except OSError:
                pass
            self.saved = None
        for signum, handler in self.old_handlers.items():
            signal.signal(signum, handler)
        self.old_handlers = {}

    def close(self):
        """stop(), then release the thread's resources. Safe to call twice."""
        self.stop()
        if self.wake_read is None:
            return
        if self.thread.is_alive():
            self.thread.join(1.0)
        if self.thread.is_alive():
            return  # still sending (a slow daemon): its descriptors go with the process
        self.sender.close()
        for fd in (self.wake_read, self.wake_write):
            os.close(fd)
        self.wake_read = self.wake_write = None

    # -- signal handlers (the main thread) --------------------------------------------------

    def _on_resize(self, signum, frame):
        self.resized = True
        self._wake()

    def _on_exit_signal(self, signum, frame):
        raise TerminalSignal(signum)

    def _wake(self):
        try:
            os.write(self.wake_write, b"x")
        except (OSError, TypeError):
            pass

    # -- the forwarding thread --------------------------------------------------------------

    def _window(self):
        import fcntl
        import termios

        try:
            rows, cols = struct.unpack("HHHH", fcntl.ioctl(self.stdin, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        except OSError:
            return None, None
        return (rows, cols) if rows and cols else (None, None)

    def _forward(self):
        try:
            if self.background:
                self.sender.send(eof=True)
                return
            while not self.done.is_set():
                if self.resized and self.terminal:
                    self.resized = False
                    rows, cols = self._window()
                    if rows:
                        self.sender.send(rows=rows, cols=cols)
                readable, _, _ = select.select([self.stdin, self.wake_read], [], [])
                if self.wake_read in readable:
                    try:
                        while os.read(self.wake_read, 64):
                            pass
                    except OSError:
                        pass
                if self.stdin not in readable or self.done.is_set():
                    continue
                try:
                    data = os.read(self.stdin, READ_SIZE)
                except OSError:
                    data = b""
                if not data:
                    self.sender.send(eof=True)  # the job's stdin ends too
                    return
                self.sender.send(data=data)
        except OSError:
            return  # the stream is over (the job ended, or the daemon closed it)



def _in_background(fd):
    try:
        return os.tcgetpgrp(fd) != os.getpgrp()
    except OSError:
        return False
