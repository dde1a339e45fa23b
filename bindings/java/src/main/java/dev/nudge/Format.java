package dev.nudge;

/** How prompts and completions are written. */
public enum Format {
    /** Plain UTF-8 text; an EOS token is appended to completions in training. */
    TEXT(0),
    /** JSON arrays of chat messages, rendered with the model's chat template. */
    CHAT_JSON(1);

    final int code;

    Format(int code) {
        this.code = code;
    }

    static Format of(int code) {
        for (Format f : values()) {
            if (f.code == code) {
                return f;
            }
        }
        throw new IllegalArgumentException("unknown format " + code);
    }
}
