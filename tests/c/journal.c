/* The feedback journal through the C API on the real model: a dozen thumbs recorded,
 * turned into a dataset of pairs, trained on for one step, marked trained; only later
 * events are new; the file survives being closed and reopened; misuse returns statuses.
 *
 * usage: journal MODEL */
#include "common.h"

#include <math.h>

static const char *PROMPTS[] = {
    "What is the capital of France?", "Name a primary color.", "How many legs does a cat have?",
    "What is 2 + 2?",                 "Say hello.",            "What color is the sky?",
};
static const char *GOOD[] = {
    "The capital of France is Paris.", "Red is a primary color.", "A cat has four legs.",
    "2 + 2 is 4.",                     "Hello! How can I help?",  "The sky is blue.",
};
static const char *BAD[] = {
    "idk, look it up yourself", "whatever, colors are boring", "Why do you care?",
    "Do your own homework.",    "No.",                         "Go outside and look.",
};

static NudgeJournalStats stats(const NudgeJournal *j) {
    NudgeJournalStats s;
    CHECK_OK(nudge_journal_stats_init(&s, sizeof s));
    CHECK(s.last_training_ms == -1);
    CHECK_OK(nudge_journal_stats(j, &s));
    CHECK(s.struct_size == sizeof s);
    return s;
}

typedef struct Listed {
    size_t events;
    size_t with_text; /* events whose prompt or answers hold `needle` */
    const char *needle;
    uint64_t first_seq;
} Listed;

static int32_t on_event(const NudgeEvent *e, void *user) {
    Listed *l = (Listed *)user;
    CHECK(e->id != NULL && e->prompt != NULL && e->completion != NULL);
    CHECK(e->kind == NUDGE_EVENT_THUMB ? e->rejected == NULL : e->rejected != NULL);
    if (l->events == 0) {
        l->first_seq = e->seq;
    }
    l->events++;
    if (strstr(e->prompt, l->needle) || strstr(e->completion, l->needle)) {
        l->with_text++;
    }
    return 0;
}

static Listed list(const NudgeJournal *j, const char *needle) {
    Listed l;
    memset(&l, 0, sizeof l);
    l.needle = needle;
    CHECK_OK(nudge_journal_list(j, on_event, &l));
    return l;
}

/* Whether the file holds `needle` anywhere (forgotten text must leave the disk). */
static int file_holds(const char *path, const char *needle) {
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++) {
        if (memcmp(buf + i, needle, k) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The user asks to forget a prompt: gone from datasets and listings at once, from the file
 * after compaction; a torn tail is reported on open; a damaged middle is repaired. */
static void forgetting(const char *path) {
    NudgeJournal *j = NULL;
    CHECK_OK(nudge_journal_open(path, NULL, &j));
    uint64_t cut = 99;
    CHECK_OK(nudge_journal_recovered(j, &cut, NULL));
    CHECK(cut == 0);
    const char *secret = PROMPTS[2];
    Listed before = list(j, secret);
    CHECK(before.events == 14 && before.with_text == 2);

    size_t n = 0;
    CHECK_OK(nudge_journal_forget_prompt(j, secret, NUDGE_TEXT, &n));
    CHECK(n == 2);
    Listed after = list(j, secret);
    CHECK(after.events == 12 && after.with_text == 0);
    NudgeJournalStats s = stats(j);
    CHECK(s.forgotten == 2);
    NudgeDataset *d = NULL;
    CHECK_OK(nudge_dataset_new(&d));
    NudgeJournalDataOptions dopt;
    CHECK_OK(nudge_journal_data_options_init(&dopt, sizeof dopt));
    dopt.only_new = 0;
    size_t n_pairs = 0, n_thumbs = 0;
    CHECK_OK(nudge_dataset_add_journal(d, j, &dopt, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 6); /* five thumbs pairs and the explicit pair; the secret's is gone */
    nudge_dataset_free(d);
    CHECK(file_holds(path, GOOD[2]));
    CHECK_OK(nudge_journal_compact(j, 0));
    CHECK(!file_holds(path, GOOD[2]) && !file_holds(path, secret));
    CHECK(stats(j).forgotten == 0);

    /* By number, and by time: the first event listed, then everything. */
    Listed now = list(j, secret);
    CHECK_OK(nudge_journal_forget(j, &now.first_seq, 1, &n));
    CHECK(n == 1);
    CHECK_OK(nudge_journal_forget(j, &now.first_seq, 1, &n));
    CHECK(n == 0);
    uint64_t nothing = 1u << 30;
    CHECK_STATUS(nudge_journal_forget(j, &nothing, 1, &n), NUDGE_ERR_INVALID);
    CHECK_OK(nudge_journal_forget_between(j, 0, UINT64_MAX, &n));
    CHECK(n == now.events - 1 && list(j, secret).events == 0);
    nudge_journal_free(j);

    /* An unfinished write at the end is cut on open and reported. */
    FILE *f = fopen(path, "ab");
    CHECK(f != NULL);
    fwrite("\x40\x00\x00\x00garbage", 1, 11, f);
    fclose(f);
    CHECK_OK(nudge_journal_open(path, NULL, &j));
    uint64_t at = 0;
    CHECK_OK(nudge_journal_recovered(j, &cut, &at));
    CHECK(cut == 11 && at > 0);
    CHECK_STATUS(nudge_journal_recovered(j, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_OK(nudge_journal_add_thumb(j, "after", PROMPTS[0], GOOD[0], NUDGE_TEXT, 1, NAN, NULL));
    CHECK_OK(nudge_journal_add_thumb(j, "after-2", PROMPTS[1], GOOD[1], NUDGE_TEXT, 1, NAN, NULL));
    nudge_journal_free(j);

    /* A damaged middle: open refuses it naming the record, repair keeps the rest. */
    f = fopen(path, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, 32 + 12, SEEK_SET) == 0); /* inside the first record's payload */
    int c = fgetc(f);
    CHECK(c != EOF && fseek(f, 32 + 12, SEEK_SET) == 0);
    fputc(c ^ 0x10, f);
    fclose(f);
    CHECK_STATUS(nudge_journal_open(path, NULL, &j), NUDGE_ERR_FORMAT);
    CHECK_MESSAGE("record 0");
    uint64_t dropped = 0;
    CHECK_OK(nudge_journal_repair(path, &dropped));
    CHECK(dropped > 0);
    CHECK_OK(nudge_journal_open(path, NULL, &j));
    CHECK(stats(j).thumbs == 2); /* the two added after the cut; the rest was forgotten */
    nudge_journal_free(j);
    CHECK_STATUS(nudge_journal_repair(NULL, NULL), NUDGE_ERR_NULL);
}

static void remove_journal(const char *dir, const char *path) {
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv) {
    const char *model_file = model_path(argc, argv);
    char dir[4096], path[4200], id[64];
    make_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/feedback.journal", dir);

    NudgeJournalOptions jo;
    CHECK_OK(nudge_journal_options_init(&jo, sizeof jo));
    CHECK(jo.durability == NUDGE_DURABILITY_EVERY_RECORD);
    jo.durability = NUDGE_DURABILITY_BATCH;
    NudgeJournal *journal = NULL;
    CHECK_OK(nudge_journal_open(path, &jo, &journal));
    CHECK(journal != NULL);
    NudgeJournalStats s = stats(journal);
    CHECK(s.records == 0 && s.next_sequence == 0 && s.last_training_ms == -1);

    /* A dozen thumbs: up on the polite answer, down on the rude one, for six prompts. */
    for (uint32_t i = 0; i < 6; i++) {
        uint64_t seq = 99;
        snprintf(id, sizeof id, "up-%u", i);
        CHECK_OK(nudge_journal_add_thumb(journal, id, PROMPTS[i], GOOD[i], NUDGE_TEXT, 1, NAN, &seq));
        CHECK(seq == 2 * i);
        snprintf(id, sizeof id, "down-%u", i);
        CHECK_OK(nudge_journal_add_thumb(journal, id, PROMPTS[i], BAD[i], NUDGE_TEXT, 0, 1.0f, &seq));
        CHECK(seq == 2 * i + 1);
    }
    /* A retry of an event already recorded is kept in the file but trains once. */
    CHECK_OK(nudge_journal_add_thumb(journal, "up-0", PROMPTS[0], GOOD[0], NUDGE_TEXT, 1, NAN, NULL));
    CHECK_OK(nudge_journal_sync(journal));
    s = stats(journal);
    CHECK(s.records == 13 && s.thumbs == 13 && s.thumbs_up == 7 && s.thumbs_down == 6);
    CHECK(s.pairs == 0 && s.training_marks == 0 && s.new_since_training == 13 && s.next_sequence == 13);
    CHECK(s.file_bytes > 0);

    /* Misuse. */
    CHECK_STATUS(nudge_journal_add_thumb(journal, "", PROMPTS[0], GOOD[0], NUDGE_TEXT, 1, NAN, NULL),
                 NUDGE_ERR_INVALID);
    CHECK_MESSAGE("non-empty id");
    CHECK_STATUS(nudge_journal_add_thumb(journal, NULL, PROMPTS[0], GOOD[0], NUDGE_TEXT, 1, NAN, NULL),
                 NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_add_thumb(journal, "x", "caf\xc3(", GOOD[0], NUDGE_TEXT, 1, NAN, NULL),
                 NUDGE_ERR_UTF8);
    CHECK_STATUS(nudge_journal_add_thumb(journal, "x", PROMPTS[0], GOOD[0], NUDGE_TEXT, 1, -1.0f, NULL),
                 NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_journal_add_thumb(journal, "x", PROMPTS[0], GOOD[0], NUDGE_CHAT_JSON, 1, NAN, NULL),
                 NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_journal_add_pair(journal, "x", PROMPTS[0], GOOD[0], NULL, NUDGE_TEXT, NAN, NULL),
                 NUDGE_ERR_NULL);
    {
        NudgeJournal *again = (NudgeJournal *)1;
        CHECK(nudge_journal_open(path, NULL, &again) != NUDGE_OK);
        CHECK(again == NULL);
    }
    CHECK(stats(journal).records == 13);

    /* Pairs from the thumbs: six, no leftovers. */
    NudgeDataset *data = NULL;
    CHECK_OK(nudge_dataset_new(&data));
    CHECK_STATUS(nudge_journal_mark_trained(journal, data), NUDGE_ERR_INVALID);
    NudgeJournalDataOptions dopt;
    CHECK_OK(nudge_journal_data_options_init(&dopt, sizeof dopt));
    CHECK(dopt.only_new == 1 && dopt.target == NUDGE_JOURNAL_PAIRS && dopt.unpaired == NUDGE_UNPAIRED_THUMBS);
    size_t n_pairs = 0, n_thumbs = 9;
    CHECK_OK(nudge_dataset_add_journal(data, journal, &dopt, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 6 && n_thumbs == 0);
    CHECK_OK(nudge_dataset_count(data, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 6 && n_thumbs == 0);

    /* Train one step on them. */
    NudgeModel *model = open_model(model_file);
    NudgeAdapter *adapter = NULL;
    CHECK_OK(nudge_adapter_new(model, NULL, &adapter));
    NudgeTrainOptions to = quick_options(1);
    NudgeTrainResult result = empty_result();
    CHECK_OK(nudge_train(adapter, data, &to, NULL, NULL, &result));
    CHECK(result.steps == 1 && result.skipped_steps == 0 && isfinite(result.last.loss));
    printf("journal train loss=%.17g\n", result.last.loss);

    /* Marked trained: nothing is new; an event after the mark is. */
    CHECK_OK(nudge_journal_mark_trained(journal, data));
    s = stats(journal);
    CHECK(s.records == 14 && s.training_marks == 1 && s.new_since_training == 0 && s.last_training_ms > 0);
    CHECK_OK(nudge_journal_add_pair(journal, "pair-0",
                                    "[{\"role\": \"user\", \"content\": \"Say hello.\"}]",
                                    "[{\"role\": \"assistant\", \"content\": \"Hello!\"}]",
                                    "[{\"role\": \"assistant\", \"content\": \"No.\"}]", NUDGE_CHAT_JSON, 2.0f,
                                    NULL));
    CHECK(stats(journal).new_since_training == 1);
    NudgeDataset *next = NULL;
    CHECK_OK(nudge_dataset_new(&next));
    CHECK_OK(nudge_dataset_add_journal(next, journal, NULL, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 1 && n_thumbs == 0);
    /* The whole journal as thumbs rows: 12 thumbs (the retry left out) and 2 from the pair. */
    dopt.only_new = 0;
    dopt.target = NUDGE_JOURNAL_THUMBS;
    CHECK_OK(nudge_dataset_add_journal(next, journal, &dopt, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 0 && n_thumbs == 14);
    CHECK_OK(nudge_dataset_count(next, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 1 && n_thumbs == 14);
    dopt.target = 5;
    CHECK_STATUS(nudge_dataset_add_journal(next, journal, &dopt, NULL, NULL), NUDGE_ERR_INVALID);

    /* Closed and reopened, the file holds every record. */
    nudge_journal_free(journal);
    nudge_journal_free(journal);
    CHECK_STATUS(nudge_journal_sync(journal), NUDGE_ERR_INVALID);
    CHECK_OK(nudge_journal_open(path, NULL, &journal));
    s = stats(journal);
    CHECK(s.records == 15 && s.pairs == 1 && s.training_marks == 1 && s.new_since_training == 1);
    nudge_journal_free(journal);
    nudge_journal_free(NULL);
    forgetting(path);

    nudge_dataset_free(data);
    nudge_dataset_free(next);
    nudge_adapter_free(adapter);
    nudge_model_free(model);
    CHECK(nudge_live_handles() == 0);
    remove_journal(dir, path);
    printf("journal: ok\n");
    return 0;
}
