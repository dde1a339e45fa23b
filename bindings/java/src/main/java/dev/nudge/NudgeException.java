package dev.nudge;

/**
 * A call of the C library returned a status other than NUDGE_OK. {@link #status()} is the
 * stable NudgeStatus value (the ERR_* constants), {@link #statusName()} its name and
 * {@link #nativeMessage()} the library's message (it names the argument, file or index at
 * fault).
 */
public class NudgeException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public static final int ERR_NULL = 1;
    public static final int ERR_UTF8 = 2;
    public static final int ERR_IO = 3;
    public static final int ERR_FORMAT = 4;
    public static final int ERR_INVALID = 5;
    public static final int ERR_BUSY = 6;
    public static final int ERR_CANCELLED = 7;
    public static final int ERR_PANIC = 8;
    public static final int ERR_UNSUPPORTED = 9;
    public static final int ERR_NO_MEMORY = 10;

    private final int status;
    private final String statusName;
    private final String nativeMessage;

    public NudgeException(int status, String statusName, String nativeMessage) {
        super(statusName + ": " + nativeMessage);
        this.status = status;
        this.statusName = statusName;
        this.nativeMessage = nativeMessage;
    }

    /** From C: the name and message as UTF-8. */
    NudgeException(int status, byte[] statusName, byte[] nativeMessage) {
        this(status, Native.string(statusName), Native.string(nativeMessage));
    }

    public int status() {
        return status;
    }

    public String statusName() {
        return statusName;
    }

    public String nativeMessage() {
        return nativeMessage;
    }
}
