package dev.nudge;

/** Training examples held in memory: preference pairs, or thumbs for the "kto" loss. */
public final class Dataset extends NativeHandle {
    public Dataset() {
        super(Native.datasetNew());
    }

    @Override
    void free(long handle) {
        Native.datasetFree(handle);
    }

    /** Adds a pair: for {@code prompt}, {@code chosen} is preferred over {@code rejected}. */
    public Dataset addPair(String prompt, String chosen, String rejected, Format format) {
        Native.datasetAdd(handle(), Native.utf8(prompt, "prompt"), Native.utf8(chosen, "chosen"),
                Native.utf8(rejected, "rejected"), false, format.code);
        return this;
    }

    /** Adds a thumbs-up or thumbs-down on {@code completion}. */
    public Dataset addThumb(String prompt, String completion, boolean up, Format format) {
        Native.datasetAdd(handle(), Native.utf8(prompt, "prompt"), Native.utf8(completion, "completion"), null, up,
                format.code);
        return this;
    }

    /**
     * Adds the journal's events as examples (see {@link Journal.DataOptions}) and returns how
     * many were added. The dataset remembers them for {@link Journal#markTrained}.
     */
    public Counts addJournal(Journal journal, Journal.DataOptions options) {
        Native.required(journal, "journal");
        long[] n = new long[2];
        Native.datasetAddJournal(handle(), journal.handle(), Native.required(options, "options"), n);
        return new Counts(n[0], n[1]);
    }

    public Counts counts() {
        long[] n = new long[2];
        Native.datasetCount(handle(), n);
        return new Counts(n[0], n[1]);
    }

    /** Numbers of pairs and thumbs. */
    public static final class Counts {
        private final long pairs, thumbs;

        Counts(long pairs, long thumbs) {
            this.pairs = pairs;
            this.thumbs = thumbs;
        }

        public long pairs() { return pairs; }
        public long thumbs() { return thumbs; }

        @Override
        public String toString() {
            return pairs + " pairs, " + thumbs + " thumbs";
        }
    }
}
