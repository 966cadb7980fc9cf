#!/bin/bash
/tmp/i11hp/run.sh /tmp/clean-after after /tmp/i11hp/models-after
/tmp/i11hp/run.sh /tmp/clean-before before2 /tmp/i11hp/models
/tmp/i11hp/run.sh /tmp/clean-after after-oldmodel /tmp/i11hp/models
