package dev.nudge;

import java.util.Collections;
import java.util.List;

/**
 * A crash-safe feedback journal file: thumbs and preference pairs as the user gives them,
 * turned into training data with {@link #dataset} or {@link Dataset#addJournal}. One handle at a
 * time may have a file open.
 */
public final class Journal extends NativeHandle {
    /** When events reach the disk. */
    public enum Durability {
        /** Every event is fsynced before its add returns (the default). */
        EVERY_RECORD,
        /** At {@link #sync()} and {@link #close()}. */
        BATCH
    }

    private Journal(long handle) {
        super(handle);
    }

    /** Opens the journal at {@code path}, creating it if missing, with the default durability. */
    public static Journal open(String path) {
        return new Journal(Native.journalOpen(Native.utf8(path, "path"), -1));
    }

    public static Journal open(String path, Durability durability) {
        return new Journal(Native.journalOpen(Native.utf8(path, "path"), durability.ordinal()));
    }

    /** Rewrites a journal whose middle is damaged without the damaged stretches; returns the
     * bytes passed over. The file must not be open. */
    public static long repair(String path) {
        return Native.journalRepair(Native.utf8(path, "path"));
    }

    @Override
    void free(long handle) {
        Native.journalFree(handle);
    }

    /** A thumbs-up or -down on {@code completion} in plain text; returns its sequence number. */
    public long addThumb(String id, String prompt, String completion, boolean up) {
        return addThumb(id, prompt, completion, up, Format.TEXT, Float.NaN);
    }

    /**
     * Records a thumb. {@code id} is the app's name of the event: repeating it is a retry and
     * does not train twice. {@code strength} weighs it in training (NaN: none given).
     */
    public long addThumb(String id, String prompt, String completion, boolean up, Format format, float strength) {
        return Native.journalAdd(handle(), Native.utf8(id, "id"), Native.utf8(prompt, "prompt"),
                Native.utf8(completion, "completion"), null, up, format.code, strength);
    }

    public long addPair(String id, String prompt, String chosen, String rejected) {
        return addPair(id, prompt, chosen, rejected, Format.TEXT, Float.NaN);
    }

    /** Records that the user preferred {@code chosen} over {@code rejected}. */
    public long addPair(String id, String prompt, String chosen, String rejected, Format format, float strength) {
        return Native.journalAdd(handle(), Native.utf8(id, "id"), Native.utf8(prompt, "prompt"),
                Native.utf8(chosen, "chosen"), Native.utf8(rejected, "rejected"), false, format.code, strength);
    }

    public void sync() {
        Native.journalSync(handle());
    }

    public Stats stats() {
        Stats s = new Stats();
        Native.journalStats(handle(), s);
        return s;
    }

    /** The events (not those forgotten; retries and duplicates included), oldest first. */
    public List<Event> events() {
        Native.EventSink sink = new Native.EventSink();
        Native.journalList(handle(), sink);
        return Collections.unmodifiableList(sink.events);
    }

    /** A new dataset of the journal's events; the caller closes it. */
    public Dataset dataset(DataOptions options) {
        Dataset d = new Dataset();
        try {
            d.addJournal(this, options);
            return d;
        } catch (RuntimeException | Error e) {
            d.close();
            throw e;
        }
    }

    /** Records that a training run on {@code data} succeeded: its events are no longer new. */
    public void markTrained(Dataset data) {
        Native.journalMarkTrained(handle(), Native.required(data, "data").handle());
    }

    /** Forgets events by sequence number; returns how many were newly forgotten. */
    public long forget(long... seqs) {
        return Native.journalForget(handle(), Native.required(seqs, "seqs"));
    }

    /** Forgets every event on {@code prompt}. */
    public long forgetPrompt(String prompt, Format format) {
        return Native.journalForgetPrompt(handle(), Native.utf8(prompt, "prompt"), format.code);
    }

    /** Forgets every event recorded from {@code fromMs} to {@code toMs} (Unix ms, inclusive). */
    public long forgetBetween(long fromMs, long toMs) {
        return Native.journalForgetBetween(handle(), fromMs, toMs);
    }

    /** Rewrites the file without what no longer counts (forgotten events gone from disk). */
    public void compact(boolean dropTrained) {
        Native.journalCompact(handle(), dropTrained);
    }

    /** Bytes of an unfinished write cut off the end when the journal was opened (0: none). */
    public long recoveredBytes() {
        long[] out = new long[2];
        Native.journalRecovered(handle(), out);
        return out[0];
    }

    /** Which events {@link #dataset} takes, and how; the defaults are the library's. */
    public static final class DataOptions {
        private boolean onlyNew;
        private int target, unpaired;

        public DataOptions() {
            Native.journalDataDefaults(this);
        }

        /** Only events no training run consumed yet (default true). */
        public DataOptions onlyNew(boolean on) {
            onlyNew = on;
            return this;
        }

        /** true: unpaired rows for "kto"; false (default): pairs, thumbs up and down on a prompt paired. */
        public DataOptions thumbs(boolean on) {
            target = on ? 1 : 0;
            return this;
        }

        /** true: thumbs without a partner wait for one; false (default): they become thumbs rows. */
        public DataOptions keepUnpaired(boolean on) {
            unpaired = on ? 1 : 0;
            return this;
        }
    }

    /** Counts of a journal's records (filled by the library). */
    public static final class Stats {
        private int records, thumbs, thumbsUp, thumbsDown, pairs, trainingMarks, newSinceTraining;
        private long nextSequence, fileBytes, lastTrainingMs, forgotten;

        Stats() {}

        public int records() { return records; }
        public int thumbs() { return thumbs; }
        public int thumbsUp() { return thumbsUp; }
        public int thumbsDown() { return thumbsDown; }
        public int pairs() { return pairs; }
        public int trainingMarks() { return trainingMarks; }
        /** Thumbs and pairs no training run has consumed yet. */
        public int newSinceTraining() { return newSinceTraining; }
        public long nextSequence() { return nextSequence; }
        public long fileBytes() { return fileBytes; }
        /** Unix ms of the last training mark; -1 if none. */
        public long lastTrainingMs() { return lastTrainingMs; }
        /** Forgotten events still in the file until the next compaction. */
        public long forgotten() { return forgotten; }
    }

    /** One event of the journal. */
    public static final class Event {
        private final long seq, timestampMs;
        private final boolean pair, thumbsUp, isNew;
        private final Format format;
        private final float strength;
        private final String id, prompt, completion, rejected;

        Event(long seq, long timestampMs, int kind, Format format, boolean thumbsUp, boolean isNew, float strength,
                String id, String prompt, String completion, String rejected) {
            this.seq = seq;
            this.timestampMs = timestampMs;
            this.pair = kind == 1;
            this.format = format;
            this.thumbsUp = thumbsUp;
            this.isNew = isNew;
            this.strength = strength;
            this.id = id;
            this.prompt = prompt;
            this.completion = completion;
            this.rejected = rejected;
        }

        /** What {@link #forget} takes. */
        public long seq() { return seq; }
        public long timestampMs() { return timestampMs; }
        /** A preference pair (else a thumb). */
        public boolean isPair() { return pair; }
        public Format format() { return format; }
        public boolean thumbsUp() { return thumbsUp; }
        /** No training run has consumed it yet. */
        public boolean isNew() { return isNew; }
        /** NaN when the app gave none. */
        public float strength() { return strength; }
        public String id() { return id; }
        public String prompt() { return prompt; }
        /** The rated answer of a thumb, the chosen one of a pair. */
        public String completion() { return completion; }
        /** The rejected answer of a pair; null for a thumb. */
        public String rejected() { return rejected; }
    }
}
