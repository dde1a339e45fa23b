package dev.nudge;

import java.util.concurrent.atomic.AtomicLong;

/**
 * A handle of the C library held as a long. Closing frees it once, however many times and from
 * however many threads close() is called. The library's handles are ids, not addresses: a call
 * that raced with close() gets NUDGE_ERR_INVALID, never a crash.
 */
abstract class NativeHandle implements AutoCloseable {
    private final AtomicLong handle;

    NativeHandle(long handle) {
        this.handle = new AtomicLong(handle);
    }

    /** The live handle; IllegalStateException once closed. */
    final long handle() {
        long h = handle.get();
        if (h == 0) {
            throw new IllegalStateException(getClass().getSimpleName() + " is closed");
        }
        return h;
    }

    /** The handle of an optional argument: 0 (the C NULL) for null. */
    static long handleOf(NativeHandle h) {
        return h == null ? 0 : h.handle();
    }

    public final boolean isClosed() {
        return handle.get() == 0;
    }

    abstract void free(long handle);

    @Override
    public final void close() {
        long h = handle.getAndSet(0);
        if (h != 0) {
            free(h);
        }
    }
}
