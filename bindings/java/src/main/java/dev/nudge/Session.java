package dev.nudge;

/**
 * A chat conversation and its KV cache: each turn runs only the tokens the session does not
 * hold yet. Needs a model with a chat template. The session keeps the model open, and the
 * adapter handle it was given (so an {@link Adapter#swap} applies from the next turn on).
 */
public final class Session extends NativeHandle {
    private Session(long handle) {
        super(handle);
    }

    /**
     * @param adapter the replies' adapter; null: the base model
     * @param systemPrompt the conversation's first message; null: none
     */
    public static Session create(Model model, Adapter adapter, String systemPrompt) {
        Native.required(model, "model");
        return new Session(Native.sessionNew(model.handle(), handleOf(adapter),
                Native.utf8OrNull(systemPrompt, "systemPrompt")));
    }

    @Override
    void free(long handle) {
        Native.sessionFree(handle);
    }

    /** Appends a message without generating (e.g. restoring a conversation). */
    public void add(String role, String content) {
        Native.sessionAdd(handle(), Native.utf8(role, "role"), Native.utf8(content, "content"));
    }

    /**
     * Adds the user's message and generates the assistant's reply, which joins the conversation.
     * {@code userText} null: answers the conversation as it is (to regenerate a reply after
     * {@link #truncate}). A failure leaves the conversation as it was; a stop asked by the
     * listener keeps the partial reply.
     */
    public Generation send(String userText, GenerateOptions options, TokenListener listener) {
        Native.required(options, "options");
        int[] stop = new int[1];
        byte[] text = Native.sessionSend(handle(), Native.utf8OrNull(userText, "userText"), options,
                options.stopStringsUtf8(), Native.sink(listener), stop);
        return new Generation(Native.string(text), Generation.StopReason.of(stop[0]));
    }

    /**
     * The logits of the token after the whole conversation (rendered without a generation
     * prompt), one per vocabulary entry.
     */
    public float[] logits() {
        return Native.sessionLogits(handle());
    }

    /** Removes the last {@code turns} turns (each user message with what follows it). */
    public void rollback(int turns) {
        if (turns < 0) {
            throw new IllegalArgumentException("turns must not be negative (got " + turns + ")");
        }
        Native.sessionRollback(handle(), turns);
    }

    /** Keeps the first {@code messages} messages (the system prompt counts as one). */
    public void truncate(int messages) {
        if (messages < 0) {
            throw new IllegalArgumentException("messages must not be negative (got " + messages + ")");
        }
        Native.sessionTruncate(handle(), messages);
    }

    /** The conversation as a JSON array of {"role", "content"} ({@link Format#CHAT_JSON}). */
    public String messagesJson() {
        return Native.string(Native.sessionMessages(handle()));
    }

    public Info info() {
        Info info = new Info();
        Native.sessionInfo(handle(), info);
        return info;
    }

    /** The size of a session (filled by the library). */
    public static final class Info {
        private int messages;
        private long cachedTokens, reusedTokens, cacheBytes;

        Info() {}

        /** Messages in the conversation, the system prompt included. */
        public int messages() { return messages; }
        /** Tokens whose keys and values the session holds. */
        public long cachedTokens() { return cachedTokens; }
        /** Tokens the last call found in the cache instead of running them again. */
        public long reusedTokens() { return reusedTokens; }
        public long cacheBytes() { return cacheBytes; }
    }
}
