package dev.nudge;

/** The library as a whole: its version and its live handles. */
public final class Nudge {
    private Nudge() {}

    /**
     * Loads libnudge_jni (and libnudge) now rather than at first use, and checks that the
     * running libnudge has the same major version as the header the glue was built against and
     * is not older than it.
     *
     * @throws UnsatisfiedLinkError if a library is missing or the versions do not fit
     */
    public static void load() {
        int header = Native.headerVersion();
        int running = Native.versionNumber();
        if (running / 10000 != header / 10000 || running < header) {
            throw new UnsatisfiedLinkError("libnudge " + version() + " (" + running
                    + ") does not fit the header nudge_jni was built with (" + header + ")");
        }
    }

    /** The running library's version, "MAJOR.MINOR.PATCH". */
    public static String version() {
        return Native.string(Native.versionString());
    }

    /** MAJOR * 10000 + MINOR * 100 + PATCH of the running library. */
    public static int versionNumber() {
        return Native.versionNumber();
    }

    /** Handles of every kind created and not yet freed, process-wide (for leak checks). */
    public static long liveHandles() {
        return Native.liveHandles();
    }

    /** The name of a status code ("NUDGE_ERR_IO"), "NUDGE_UNKNOWN" for an unknown one. */
    public static String statusName(int status) {
        return Native.string(Native.statusName(status));
    }
}
