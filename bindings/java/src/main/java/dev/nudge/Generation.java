package dev.nudge;

/** A generated reply and why it ended. */
public final class Generation {
    /** Why a reply ended (NUDGE_STOP_*). */
    public enum StopReason {
        /** The model generated its end-of-sequence token. */
        EOS,
        /** maxNewTokens were generated. */
        LENGTH,
        /** Prompt and reply fill the model's context. */
        CONTEXT,
        /** The token listener asked to stop. */
        CALLBACK,
        /** One of the stop strings appeared (the reply ends before it). */
        STRING;

        static StopReason of(int code) {
            if (code < 0 || code >= values().length) {
                throw new IllegalStateException("unknown stop reason " + code);
            }
            return values()[code]; // NUDGE_STOP_* are 0..4 in this order, never renumbered
        }
    }

    private final String text;
    private final StopReason stopReason;

    Generation(String text, StopReason stopReason) {
        this.text = text;
        this.stopReason = stopReason;
    }

    /** The reply, special tokens left out. */
    public String text() { return text; }
    public StopReason stopReason() { return stopReason; }

    @Override
    public String toString() {
        return text;
    }
}
