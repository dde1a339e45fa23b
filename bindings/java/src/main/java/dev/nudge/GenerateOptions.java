package dev.nudge;

/** How to generate; the defaults are the library's (greedy, 256 tokens). */
public final class GenerateOptions {
    private int maxNewTokens, topK, threads;
    private float temperature, topP;
    private long seed;
    private byte[][] stopStrings = new byte[0][]; // UTF-8, passed beside the fields

    public GenerateOptions() {
        Native.generateDefaults(this);
    }

    public GenerateOptions maxNewTokens(int n) {
        this.maxNewTokens = n;
        return this;
    }

    /** 0 (the default): the most likely token every time. */
    public GenerateOptions temperature(float t) {
        this.temperature = t;
        return this;
    }

    /** Sample among the k most likely tokens (0: all). */
    public GenerateOptions topK(int k) {
        this.topK = k;
        return this;
    }

    public GenerateOptions topP(float p) {
        this.topP = p;
        return this;
    }

    /** Worker threads of this call (0: the model's). */
    public GenerateOptions threads(int n) {
        this.threads = n;
        return this;
    }

    public GenerateOptions seed(long seed) {
        this.seed = seed;
        return this;
    }

    /**
     * The reply ends where one of these first appears, and leaves it out; text that may be the
     * start of one reaches the token listener only once it cannot be.
     */
    public GenerateOptions stopStrings(String... stops) {
        Native.required(stops, "stopStrings");
        byte[][] b = new byte[stops.length][];
        for (int i = 0; i < b.length; i++) {
            b[i] = Native.utf8(stops[i], "stopStrings[" + i + "]");
        }
        this.stopStrings = b;
        return this;
    }

    byte[][] stopStringsUtf8() {
        return stopStrings;
    }
}
