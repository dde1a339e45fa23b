package dev.nudge;

/**
 * An open base model (a .gguf file or a Hugging Face directory). Read-only: any number of
 * threads may use it at once. Adapters made from it keep it open after {@link #close()}.
 */
public final class Model extends NativeHandle {
    private Model(long handle) {
        super(handle);
    }

    public static Model open(String path) {
        return open(path, new Options());
    }

    /** @throws NudgeException e.g. ERR_IO naming the path when the file is missing */
    public static Model open(String path, Options options) {
        byte[] p = Native.utf8(path, "path");
        return new Model(Native.modelOpen(p, Native.required(options, "options")));
    }

    @Override
    void free(long handle) {
        Native.modelFree(handle);
    }

    public Info info() {
        Info info = new Info();
        info.architecture = Native.string(Native.modelInfo(handle(), info));
        return info;
    }

    /** The token ids {@link #generate} would run for the prompt. */
    public int[] tokenize(String prompt, Format format) {
        return Native.tokenize(handle(), Native.utf8(prompt, "prompt"), format.code, false, new long[1]);
    }

    /** How many tokens the prompt takes (compare with {@link Info#contextLength()}). */
    public long countTokens(String prompt, Format format) {
        long[] n = new long[1];
        Native.tokenize(handle(), Native.utf8(prompt, "prompt"), format.code, true, n);
        return n[0];
    }

    /** The text of token ids; {@code skipSpecial} leaves special tokens out, as replies do. */
    public String detokenize(int[] ids, boolean skipSpecial) {
        return Native.string(Native.detokenize(handle(), Native.required(ids, "ids"), skipSpecial));
    }

    /**
     * Stops the scoring and generation calls running on this model, from any thread: they
     * throw NudgeException ERR_CANCELLED. Calls started afterwards are not affected.
     */
    public void interrupt() {
        Native.modelInterrupt(handle());
    }

    /** The log-probability of {@code completion} after {@code prompt}; adapter may be null. */
    public Score score(Adapter adapter, String prompt, String completion, Format format) {
        long[] tokens = new long[1];
        double logp = Native.score(handle(), handleOf(adapter), Native.utf8(prompt, "prompt"),
                Native.utf8(completion, "completion"), format.code, tokens);
        return new Score(logp, tokens[0]);
    }

    public Generation generate(Adapter adapter, String prompt, GenerateOptions options) {
        return generate(adapter, prompt, Format.TEXT, options, null);
    }

    /**
     * A reply to {@code prompt}, with {@code adapter} applied (null: the base model). The
     * listener (may be null) sees each token's text on this thread as it comes; an exception it
     * throws stops the reply and is rethrown here as it is.
     */
    public Generation generate(Adapter adapter, String prompt, Format format, GenerateOptions options,
            TokenListener listener) {
        Native.required(options, "options");
        int[] stop = new int[1];
        byte[] text = Native.generate(handle(), handleOf(adapter), Native.utf8(prompt, "prompt"), format.code,
                options, options.stopStringsUtf8(), Native.sink(listener), stop);
        return new Generation(Native.string(text), Generation.StopReason.of(stop[0]));
    }

    /**
     * {@code samples} replies to each prompt, decoded together (up to {@code maxRows} at once; 0:
     * all, negative: the library's default of 16; each running reply holds its own KV cache).
     * Reply k of a prompt samples with seed {@code options.seed + k}; each is the reply
     * {@link #generate} gives with those options. Returns {@code [prompt][sample]}.
     */
    public Generation[][] generateBatch(Adapter adapter, String[] prompts, Format format, int samples,
            GenerateOptions options, int maxRows, BatchTokenListener listener) {
        Native.required(prompts, "prompts");
        Native.required(options, "options");
        if (samples < 0 || (long) prompts.length * samples > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("samples " + samples + " for " + prompts.length + " prompts");
        }
        byte[][] p = new byte[prompts.length][];
        for (int i = 0; i < p.length; i++) {
            p[i] = Native.utf8(prompts[i], "prompts[" + i + "]");
        }
        int[] stops = new int[prompts.length * samples];
        byte[][] texts = Native.generateBatch(handle(), handleOf(adapter), p, format.code, samples, options,
                options.stopStringsUtf8(), maxRows, listener == null ? null : new Native.BatchSink(listener), stops);
        Generation[][] out = new Generation[prompts.length][samples];
        for (int i = 0; i < texts.length; i++) {
            out[i / samples][i % samples] =
                    new Generation(Native.string(texts[i]), Generation.StopReason.of(stops[i]));
        }
        return out;
    }

    /** How to open a model; the defaults are the library's. */
    public static final class Options {
        private int threads;
        private boolean noMmap;
        private boolean bf16;
        private boolean noDecodeCopy;

        public Options() {
            Native.modelDefaults(this);
        }

        /** Worker threads of the model's calls (0: one per core). */
        public Options threads(int threads) {
            this.threads = threads;
            return this;
        }

        /** Read the weights into memory instead of mapping the file. */
        public Options noMmap(boolean noMmap) {
            this.noMmap = noMmap;
            return this;
        }

        /**
         * Run the base model's products with bf16 operands and f32 sums (CPUs with bf16 dot
         * products only; opening fails elsewhere). Decoding steps stay f32.
         */
        public Options bf16(boolean bf16) {
            this.bf16 = bf16;
            return this;
        }

        /** Decode from the weights as stored: less memory, slower decoding, the same tokens. */
        public Options noDecodeCopy(boolean noDecodeCopy) {
            this.noDecodeCopy = noDecodeCopy;
            return this;
        }
    }

    /** What the model is (filled by the library). */
    public static final class Info {
        private String architecture;
        private int format, vocabSize, hiddenSize, intermediateSize, numLayers, numAttentionHeads, numKeyValueHeads,
                headDim, contextLength, bosTokenId, eosTokenId, threads;
        private boolean hasChatTemplate;
        private long mappedBytes;

        Info() {}

        /** "llama" or "qwen2". */
        public String architecture() { return architecture; }
        /** True for a .gguf file, false for a safetensors directory. */
        public boolean isGguf() { return format == 1; }
        public int vocabSize() { return vocabSize; }
        public int hiddenSize() { return hiddenSize; }
        public int intermediateSize() { return intermediateSize; }
        public int numLayers() { return numLayers; }
        public int numAttentionHeads() { return numAttentionHeads; }
        public int numKeyValueHeads() { return numKeyValueHeads; }
        public int headDim() { return headDim; }
        /** The longest prompt + completion, in tokens. */
        public int contextLength() { return contextLength; }
        /** Whether {@link Format#CHAT_JSON} can be used. */
        public boolean hasChatTemplate() { return hasChatTemplate; }
        /** -1 when the model has none. */
        public int bosTokenId() { return bosTokenId; }
        /** -1 when the model has none. */
        public int eosTokenId() { return eosTokenId; }
        public int threads() { return threads; }
        public long mappedBytes() { return mappedBytes; }
    }

    /** A log-probability (natural log, summed) and the number of completion tokens scored. */
    public static final class Score {
        private final double logp;
        private final long tokens;

        Score(double logp, long tokens) {
            this.logp = logp;
            this.tokens = tokens;
        }

        public double logp() { return logp; }
        public long tokens() { return tokens; }
    }
}
