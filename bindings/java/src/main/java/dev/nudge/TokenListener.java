package dev.nudge;

/** Sees a reply token by token, on the thread that called generate. */
@FunctionalInterface
public interface TokenListener {
    /**
     * @param piece the text the token adds to the reply: empty while a character's bytes are
     *     incomplete or while it may be the start of a stop string; text held back that is not
     *     comes after the reply ended, in one more call with the last token's id (whose return
     *     value is ignored). The pieces always add up to the reply's text.
     * @return true to go on, false to stop the reply after this token
     */
    boolean onToken(String piece, int tokenId);
}
