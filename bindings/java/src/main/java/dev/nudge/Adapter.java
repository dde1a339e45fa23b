package dev.nudge;

/**
 * A LoRA adapter for one model; it keeps its model open until it is closed too. Training
 * needs it alone: other calls on it meanwhile throw NudgeException ERR_BUSY.
 */
public final class Adapter extends NativeHandle {
    /** Element type of the exports. */
    public enum Dtype {
        F32, F16, BF16 // NUDGE_DTYPE_* 0..2
    }

    public static final int TARGET_Q_PROJ = 1, TARGET_K_PROJ = 2, TARGET_V_PROJ = 4, TARGET_O_PROJ = 8,
            TARGET_GATE_PROJ = 16, TARGET_UP_PROJ = 32, TARGET_DOWN_PROJ = 64, TARGET_ALL = 127;

    private Adapter(long handle) {
        super(handle);
    }

    /** A new adapter (B = 0: it changes nothing until trained). */
    public static Adapter create(Model model, Options options) {
        Native.required(model, "model");
        return new Adapter(Native.adapterNew(model.handle(), Native.required(options, "options")));
    }

    /** A PEFT directory or a llama.cpp LoRA .gguf made for this model. */
    public static Adapter load(Model model, String path) {
        Native.required(model, "model");
        return new Adapter(Native.adapterLoad(model.handle(), Native.utf8(path, "path")));
    }

    @Override
    void free(long handle) {
        Native.adapterFree(handle);
    }

    /**
     * A new adapter holding a copy of this one as it is now (memory is shared until one of them
     * is trained): train the copy while this one keeps serving, then {@link #swap} them.
     */
    public Adapter copy() {
        return new Adapter(Native.adapterClone(handle()));
    }

    /**
     * Exchanges what {@code a} and {@code b} hold, atomically: calls that start afterwards see
     * the other's weights; calls already running finish with the weights they started with.
     */
    public static void swap(Adapter a, Adapter b) {
        Native.adapterSwap(Native.required(a, "a").handle(), Native.required(b, "b").handle());
    }

    /**
     * A new adapter applying {@code adapters} together, exactly: its update is the sum of theirs,
     * each times its weight ({@code weights} null: 1 each). A copy made now.
     */
    public static Adapter stack(Adapter[] adapters, float[] weights) {
        Native.required(adapters, "adapters");
        if (weights != null && weights.length != adapters.length) {
            throw new IllegalArgumentException(
                    weights.length + " weights for " + adapters.length + " adapters: give one each, or null");
        }
        long[] h = new long[adapters.length];
        for (int i = 0; i < h.length; i++) {
            h[i] = Native.required(adapters[i], "adapters[" + i + "]").handle();
        }
        return new Adapter(Native.adapterStack(h, weights));
    }

    /** Writes a PEFT directory (adapter_config.json + adapter_model.safetensors). */
    public void savePeft(String dir) {
        Native.adapterSave(handle(), 0, Native.utf8(dir, "dir"), 0);
    }

    /** Writes a llama.cpp LoRA GGUF file. */
    public void saveGguf(String path, Dtype dtype) {
        Native.adapterSave(handle(), 1, Native.utf8(path, "path"), dtype.ordinal());
    }

    /** Writes the base model with this adapter merged in, as a Hugging Face directory. */
    public void saveMerged(String dir, Dtype dtype) {
        Native.adapterSave(handle(), 2, Native.utf8(dir, "dir"), dtype.ordinal());
    }

    public Info info() {
        Info info = new Info();
        Native.adapterInfo(handle(), info);
        return info;
    }

    public TrainResult train(Dataset data, TrainOptions options) {
        return train(data, options, null);
    }

    /**
     * Trains this adapter on {@code data} (pairs for the pair losses, thumbs for "kto"). The
     * listener (may be null) runs on this thread after each step; returning false stops the run
     * (the result then says {@link TrainResult#cancelled()}), and an exception it throws stops
     * the run and is rethrown here as it is. The adapter keeps every step completed.
     */
    public TrainResult train(Dataset data, TrainOptions options, ProgressListener listener) {
        Native.required(data, "data");
        Native.required(options, "options");
        TrainResult r = new TrainResult();
        Native.train(handle(), data.handle(), options, Native.utf8OrNull(options.loss(), "loss"),
                listener == null ? null : new Native.ProgressSink(listener), r, r.last(), r.eval());
        return r;
    }

    /** The shape of a new adapter; the defaults are the library's. */
    public static final class Options {
        private int rank, targets, init;
        private float alpha, dropout;
        private boolean rslora;
        private long seed;

        public Options() {
            Native.adapterDefaults(this);
        }

        public Options rank(int r) {
            this.rank = r;
            return this;
        }

        /** The update is scaled by alpha / rank (alpha / sqrt(rank) with rsLoRA). */
        public Options alpha(float alpha) {
            this.alpha = alpha;
            return this;
        }

        /** TARGET_* bits. */
        public Options targets(int targets) {
            this.targets = targets;
            return this;
        }

        public Options rslora(boolean on) {
            this.rslora = on;
            return this;
        }

        public Options dropout(float p) {
            this.dropout = p;
            return this;
        }

        /** false: A ~ kaiming uniform (PEFT's default); true: A ~ N(0, 1/r). */
        public Options gaussianInit(boolean on) {
            this.init = on ? 1 : 0;
            return this;
        }

        /** Seed of A's initialization. */
        public Options seed(long seed) {
            this.seed = seed;
            return this;
        }
    }

    /** What an adapter is (filled by the library). */
    public static final class Info {
        private int rank, targets;
        private float alpha, dropout;
        private boolean rslora;
        private long params;

        Info() {}

        public int rank() { return rank; }
        public float alpha() { return alpha; }
        public int targets() { return targets; }
        public boolean rslora() { return rslora; }
        public float dropout() { return dropout; }
        /** Trainable parameters. */
        public long params() { return params; }
    }
}
