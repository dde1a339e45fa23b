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

    nudge_dataset_free(data);
    nudge_dataset_free(next);
    nudge_adapter_free(adapter);
    nudge_model_free(model);
    CHECK(nudge_live_handles() == 0);
    remove_journal(dir, path);
    printf("journal: ok\n");
    return 0;
}
