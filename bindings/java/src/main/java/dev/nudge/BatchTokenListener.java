package dev.nudge;

/** Sees the replies of {@link Model#generateBatch} token by token, on the calling thread. */
@FunctionalInterface
public interface BatchTokenListener {
    /** What the batch does after a token. */
    enum Action {
        /** Go on. */
        CONTINUE,
        /** End this reply after this token. */
        STOP_REPLY,
        /** End every reply now (replies not started stay empty). */
        STOP_ALL
    }

    /**
     * @param prompt the prompt's index
     * @param sample the reply's index among the prompt's samples
     * @param piece the text the token adds to that reply (see {@link TokenListener})
     */
    Action onToken(int prompt, int sample, String piece, int tokenId);
}
